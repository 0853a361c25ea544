"""A pip-installable engine compatible with the public DomainBed benchmark.

Module names, flags, output files and seeding follow the public DomainBed so that sweeps run
here and there can be compared and read by either side's tools.
"""

ENGINE = "domainbed-itl"
__version__ = "0.1.0"
