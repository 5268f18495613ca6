"""``dispatcher web``: provider webhooks, one-click unsubscribe, metrics and health."""
