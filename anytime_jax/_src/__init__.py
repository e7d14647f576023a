"""The implementation of anytime_jax: private, re-exported by the public modules."""
