"""The node DNS service (`smarter-cni dns`): pod names from the registry, the rest forwarded.

Modules: wire (DNS message format), answers (pod names -> answers),
forwarder (upstreams, their health), cache (the forward cache, serve-stale),
metrics (Prometheus text; count_repair, fetch_counters), health (the HTTP
endpoint: /metrics, /healthz, /readyz), log (a small logger), acl (who may
ask), address (the service address on the node), server (the socket loop),
service (settings, main).
"""
