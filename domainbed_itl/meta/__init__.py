"""Meta-learning a loss function by implicit gradients (Gao et al., ICML 2022, Algorithm 1-2).

Modules, one concept each: base_model (functional MLP), inner (the inner SGD loop),
hypergrad (IFT + Neumann hypergradient, and an exact one for small models), surgery (PCGrad),
families (the learnable loss families), outer (one leave-one-domain-out sweep), guard
(non-finite checks), state (checkpoints), plot (learning curve) and train (the command line).
"""
