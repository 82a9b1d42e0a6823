"""Realtime identification streams: the hosted API's gRPC service and the native WebSocket share
one stream session (`session.py`)."""
