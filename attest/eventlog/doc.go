// Package eventlog is the Attestation Agent's runtime event log (AAEL) as
// guest-components writes it and Trustee reads it (COCO_SPEC 2.5): entries
// "domain operation content" measured into a runtime register (TDX RTMR,
// vTPM PCR) and recorded as TCG2 crypto-agile EV_EVENT_TAG records; and a
// bounded parser for CCEL+AAEL logs that verifiers replay.
//
// # Record format
//
// The entry text is `<domain> <operation> <content>` (single spaces, no
// trailing newline). As upstream, only a newline in the content is refused;
// domain and operation are not checked. The text is
// wrapped in a TCG tagged event (u32 LE 0x4141454C "AAEL", u32 LE length,
// text) and digest = H(tagged event), H being the platform's CCEL hash
// (sha384 on TDX, sha256 on a vTPM). The record appended to the log file
// (which has no header) is: u32 MR index, u32 event type 6, u32 digest
// count 1, u16 algorithm id, digest, u32 event size, tagged event.
//
// # Registers, and the MR-index pitfall
//
// A request names a register as a PCR index (default init_pcr, 17). On TDX
// the PCR maps to a CC measurement register (1,7→1; 2–6→2; 8–15→3; anything
// else, including 0 and 17, →4) and the RTMR extended is CCMR−1, so PCR 17
// lands in RTMR3 and the record says MR index 4. On a vTPM the PCR is used
// as is. Like upstream, the MR index written into every record is derived
// from init_pcr, while the register actually extended is the request's;
// a request with a register other than init_pcr therefore produces a
// record whose index does not name the register it changed. We keep this
// because Trustee verifies logs that upstream writes; callers that want a
// self-consistent log should not pass a register.
//
// # Crash safety (write-ahead record)
//
// Extend first writes <dir>/.wal_event_entry (to a temporary name, then
// renamed): u64 big-endian offset of the record in the log, the expected
// register value after the extend (H(current || digest)), and the entry
// text, exactly upstream's layout. It then extends the register, writes the
// record at that offset and removes the write-ahead file. A leftover
// write-ahead file is resolved by Open (or by the next Extend after a
// failed one):
//
//   - record already at its offset in the log: the register was extended
//     (it always is before the record is written), so only the file is
//     removed;
//   - otherwise, as upstream, the register at init_pcr is read (the file
//     does not name the register of the request): if it holds the expected
//     value only the record is written; if extending it once gives the
//     expected value it is extended and the record written; any other
//     value is a fatal inconsistency (ErrRecovery);
//   - a measurer without RegisterReader cannot tell, so recovery fails
//     with ErrRecovery naming the file to inspect.
//
// When the measurer itself reports an error, Extend reads the register back
// (when it can): unchanged means the write-ahead file is dropped and the
// error returned; changed leaves it for recovery.
//
// This package must never drop or reorder an entry that may have reached a
// register, and must never allocate more than its input bounds when
// parsing a log from an untrusted source.
package eventlog
