"""Long-lived instances: EC2's states, a supervisor process per instance, key pairs, the
operations run-instances … terminate-instances and create-image."""
