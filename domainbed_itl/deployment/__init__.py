"""Deploying losses on unseen domains and tabulating the runs: the candidates, the MLP protocol
(`mlp_protocol`, run by `scripts.deploy`), the DomainBed protocol (`domainbed_protocol`, run by
`scripts.compare_losses`), their shared record format and table."""
