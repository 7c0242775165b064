"""Serving: engines, release routing, the chat service and the OpenAI-compatible API."""
