"""What every layer shares: job records, the wire view of a job, the domain's errors.

The bottom of the layers after `pipelines/`: `pipelines/` <- `domain/` <- `deployments/` <- `serve_app/`. Nothing
here imports Ray, torch or an HTTP framework, so a deployment can build a webhook event and the ingress a response
from the same view, and neither has to import the other.
"""
