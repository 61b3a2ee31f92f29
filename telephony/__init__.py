"""Following calls on Asterisk: AMI framing, channel roles, numbers, the pure call model, the AMI link."""
