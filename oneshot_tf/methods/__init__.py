"""Methods that ship with oneshot-tf; every subpackage registers itself on import."""
