"""The paper's tables (Gao et al., ICML 2022, Tables 1-4, 9, 10) and Fig. 2 from sweep directories.

One module per concern: `kinds` tells multi- from single-source records, `selection` picks the
reported run, `scores` holds the picked accuracies, `grid` counts missing jobs, `cells` formats
mean +/- standard error, `layouts` arranges the paper's tables, `paper` reads the published
figures, `critical_difference` draws Fig. 2. `domainbed_itl.scripts.paper_tables` is the CLI.
"""
