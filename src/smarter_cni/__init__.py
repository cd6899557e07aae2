"""smarter-cni: node-local pod networking with name resolution for edge gateways."""

__version__ = "0.1.0"
