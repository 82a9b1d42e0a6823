"""HTTP layer: routes per resource, schemas, auth, and the one error renderer."""
