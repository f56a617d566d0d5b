"""The service on a Ray Serve cluster: replicas, adapter-affinity routing, the job queue."""
