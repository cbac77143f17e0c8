"""The HTTP API: error mapping, dependencies, middleware and one router per resource."""
