"""The gRPC API: generated stubs (papersearch.api.v1, built from proto/) and conversions.

The stubs are generated at install time (``make proto``, ``make install`` or ``pip install``);
see papersearch.api.generate.
"""
