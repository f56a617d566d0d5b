"""The adapter store on S3-compatible object storage (AWS S3, MinIO, Ceph RGW): app.adapters.s3.store."""
