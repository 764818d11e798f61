"""Several nodes on Redis (standalone or Cluster): the only place coredis is imported.
``link`` puts a node together from the Redis journal, broker and presence."""
