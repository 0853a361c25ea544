"""Algorithms that swap the supervised loss of a base DomainBed algorithm (ERM_ITL, RSC_ITL,
ERM_Focal, ...). `engine` registers them in this project's engine, `public` in a clone of the
public DomainBed; `variants` is the table both read. Nothing is imported here, so the public
side never pulls in this project's `domainbed` package.
"""
