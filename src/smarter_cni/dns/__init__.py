"""The node DNS service (`smarter-cni dns`): pod names from the registry, the rest forwarded.

Modules: wire (DNS message format), answers (pod names -> answers),
forwarder (upstreams + cache), acl (who may ask), address (the service
address on the node), server (the socket loop), service (settings, main).
"""
