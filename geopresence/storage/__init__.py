"""The disk: the file journal and data-dir lock, snapshots, recovery and repair, and the
location history. Never imports the cluster layer."""
