"""Delivery channels: one narrow interface, several implementations."""
