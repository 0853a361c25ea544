"""Meta-learning a loss function by implicit gradients (Gao et al., ICML 2022, Algorithm 1-2).

Library modules, one concept each: base_model (functional MLP), inner (the inner SGD loop),
hypergrad and linear_solve (IFT hypergradients, Neumann and CG), splits / outer / batched /
device_loop (one leave-one-domain-out sweep, run one split after another or stacked),
ray_backend (the same sweep as parallel Ray tasks), surgery (PCGrad), families (a loss
family of domainbed_itl.losses.families at one order, as the meta-learner uses it; a learned
loss itself is domainbed_itl.losses.learned.LearnedLoss), data (the
domains), trainer (the outer loop), cma_search / cma_state (the CMA-ES baseline), guard
(non-finite checks), state (checkpoints), plot (learning curve).

Command lines: train, cmaes (sharing run_settings), check_hypergrad, compare_curves.
"""
