"""Small example services that show the service API; not part of the order pipeline."""
