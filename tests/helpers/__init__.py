"""What the test modules share: processes under test, load generators, peers,
network namespaces, a Prometheus server. Test modules import from here only,
never from each other."""
