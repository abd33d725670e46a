// Package config loads the guest-components configuration files cocoon
// accepts unchanged: the Attestation Agent's aa.toml (COCO_SPEC 2.4) and
// the Confidential Data Hub's cdh.toml (COCO_SPEC 4.2), in TOML or, chosen
// by a .json extension, JSON, as upstream's config crate does. It also
// implements the fallbacks used when no file exists: AA_KBC_PARAMS or the
// kernel command line `agent.aa_kbc_params=<kbc>::<url>`, CDH's
// `cdh.kbs_resources=<uri>::<path>,...`, and image-rs's `agent.*` image
// pull parameters. The command-line path is a parameter so tests need no
// /proc.
//
// Loading never fails on keys it does not know: each one is returned as a
// warning naming the full key (for example "unknown key kbc.foo"), because
// upstream ignores them too. A value of the wrong type, a missing required
// field, a tee_key_algorithm or kbc name upstream cannot use, or a
// credential path outside /run/confidential-containers/cdh/kbs is an error
// naming the field. Values are converted the way the config crate does, so
// `init_pcr = "17"` and `enable_eventlog = "false"` load, and a boolean may
// also be a number (true unless zero) or on/off/yes/no in any case.
// registries.conf (read upstream with serde) takes booleans only, and the
// kernel command line's agent.enable_signature_verification exactly true
// or false.
//
// Note on upstream's example.config.toml: its `work_dir` and
// `extra_root_certificates` lines follow a `[[...registry.mirror]]` table,
// so TOML assigns them to that mirror, where upstream silently drops them.
// We load the file the same way and report both keys as unknown.
//
// This package only parses. It must never fetch resources, open sockets,
// or log configuration values: certificates and URLs with credentials
// pass through untouched to their consumers.
package config
