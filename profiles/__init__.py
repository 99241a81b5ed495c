"""The network profiles shipped with vmem: TOML data files read by `vmem.profile`
(`load_profile("alexnet")`, `list_profiles()`). Their format and sources are in
README.md beside them."""
