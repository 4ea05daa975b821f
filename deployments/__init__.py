"""Ray Serve deployments: thin adapters over `pipelines/`, the job tracker and the CPU stages of a flow."""
