"""ITL, the loss learned by implicit gradients (Gao et al., ICML 2022), and its meta-learner."""

__version__ = "0.1.0"
