"""ITL, the loss learned by implicit gradients (Gao et al., ICML 2022), and its meta-learner.

Importing this package makes this project's engine carry ERM_ITL, RSC_ITL, ... (see plugin).
"""

from domainbed_itl.plugin import register_on_import

__version__ = "0.1.0"

register_on_import()
