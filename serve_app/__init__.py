"""The HTTP face of wan-serve: wire schemas, request classification, the job API, the app builder."""
