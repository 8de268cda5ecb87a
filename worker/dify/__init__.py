"""Talking to Dify, one module per concern: the SSE reader, errors, each app API, file uploads."""
