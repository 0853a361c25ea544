"""Meta-learning a loss function by implicit gradients (Gao et al., ICML 2022, Algorithm 1-2).

Library modules, one concept each: base_model (functional MLP), inner (the inner SGD loop),
hypergrad and linear_solve (IFT hypergradients, Neumann and CG), splits / outer / batched /
device_loop (one leave-one-domain-out sweep, run one split after another or stacked),
ray_backend (the same sweep as parallel Ray tasks), surgery (PCGrad), families (a loss
family of domainbed_itl.losses.families at one order, as the meta-learner uses it; a learned
loss itself is domainbed_itl.losses.learned.LearnedLoss), data (the
domains), trainer (the outer loop), guard (non-finite checks), state (checkpoints), plot
(learning curve).

Runs and their files: run_settings and run_files (what both trainers share), ift_settings /
ift_run / ift_job (implicit-gradient runs: their flags and preset, one run, several runs as one
job), cma_search / cma_state / cma_run (the CMA-ES baseline: fitness and optimizer, saved
search, one search run). Reading runs back: run_reader and seed_figures (Fig. 3 and 6 over
seeds), cost_curves (Fig. 4). Studies of the hypergradient: hypergrad_study / hypergrad_report
(small problems solved exactly), endpoint_references / endpoint_study (the real end points).

The command lines over these are in domainbed_itl.scripts (meta_train, meta_train_many,
meta_cmaes, meta_figures, meta_curves, check_hypergrad, check_endpoints).
"""
