"""Direct uploads (SPEC §11): the client puts the bytes straight into the store with a
presigned PUT (or, on the local backend, a signed URL of the service itself), then asks
`complete`, which checks what arrived before the image turns ready."""
