"""The mesh data plane's xDS side: the ADS client, translation of xDS resources into the
one model (pure), and the traffic-capture rules of sidecar mode."""
