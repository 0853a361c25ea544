"""The files of a meta-training run's directory, named once for the commands that write them
(`meta_train`, `meta_train_many`, `meta_cmaes`) and those that read them (`plan meta_train`,
`meta_curves`, `meta_figures`, deployment provenance).

A run directory of either trainer holds the log (one JSON line per outer step or generation)
and the learned loss (a `LearnedLoss` file, the current best); `meta_train` adds its checkpoint
and learning curve, `meta_cmaes` its search state. Checkpoints are saved and loaded through the
engine's run-directory rules (`domainbed.lib.run_dir`).
"""

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
LEARNED = "learned_loss.json"
CURVE = "learning_curve.png"
SEARCH_STATE = "state.json"
