"""Deploying learned losses on unseen domains and tabulating the runs: the candidates, the MLP
protocol, the DomainBed protocol (`compare_losses`), their shared record format and table."""
