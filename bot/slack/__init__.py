"""The Slack app: chat in threads, votes, A/B choices, review tasks and release approval.

A thin layer over the services the widget and the CLI use (the chat service, the
feedback store, the release life cycle): `app.py` builds the bolt app, `listeners/`
holds one module per kind of interaction, `blocks.py` draws the messages.
"""
