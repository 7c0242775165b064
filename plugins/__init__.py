"""Plugins that run before and after each answer (guardrails, RAG comparison), on pluggy."""
