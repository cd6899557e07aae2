"""The CNI protocol: environment + stdin in, result or error JSON out.

Knows nothing of data planes; handlers are supplied by the caller.
"""
