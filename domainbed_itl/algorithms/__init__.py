"""Algorithms that swap the supervised loss of a base DomainBed algorithm (ERM_ITL, RSC_ITL,
ERM_Focal, ...). `engine` registers them in this project's engine, `public` in a clone of the
public DomainBed (with the updates re-stated in `public_updates`); `variants` is the table and
`core` the class builder both use. Nothing is imported here, so the public side never pulls in
this project's `domainbed` package.
"""
