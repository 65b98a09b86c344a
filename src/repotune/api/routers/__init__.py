"""The API's routes, one router per resource; ``repotune.api.app`` mounts them."""
