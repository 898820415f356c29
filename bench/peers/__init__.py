"""The servers the gateway is measured against, each a real process with one worker."""
