"""What reminders led to: cure rates by step, channel, bucket and template variant, promises kept, experiments."""
