//! The Kafka record headers Understudy writes and reads, by name.

/// Every ack record: the event id it carries (single-event records).
pub const EVENT_ID_HEADER: &str = "understudy-event-id";

/// A batch record: the ids of the events it carries, comma-separated.
pub const EVENT_IDS_HEADER: &str = "understudy-event-ids";

/// On a batch record, one per event it carries: `STATUS payload-id`. Whatever the vendor's body looks
/// like, a reader (`understudy load`'s correlator) can tell which acks a record holds. Left out for an
/// event whose body an injected `corrupt` fault spoiled.
pub const ACK_HEADER: &str = "understudy-ack";

/// On a single-event record in a vendor format: the event's status (the record key is its payload id).
/// The native format carries both in its body.
pub const STATUS_HEADER: &str = "understudy-status";

/// A dead-letter record: why its original was rejected, in words.
pub const DLQ_REASON_HEADER: &str = "understudy-dlq-reason";

/// A dead-letter record: the rejection's kind (`not_json`, `missing_field`, …).
pub const DLQ_KIND_HEADER: &str = "understudy-dlq-kind";

/// A dead-letter copy that is not the original: `body-cut` or `headers-only`.
pub const DLQ_COPY_HEADER: &str = "understudy-dlq-copy";

/// A dead-letter copy: the original record's value size in bytes.
pub const DLQ_ORIGINAL_BYTES_HEADER: &str = "understudy-dlq-original-bytes";

/// A dead-letter record: where its original was consumed (topic, partition, offset).
pub const DLQ_SOURCE_TOPIC_HEADER: &str = "understudy-source-topic";
pub const DLQ_SOURCE_PARTITION_HEADER: &str = "understudy-source-partition";
pub const DLQ_SOURCE_OFFSET_HEADER: &str = "understudy-source-offset";

/// A message `understudy load` generated: its intended send time, in microseconds since the Unix epoch.
pub const INTENDED_AT_HEADER: &str = "understudy-intended-at-us";

/// A message `understudy load` generated: the run's id.
pub const RUN_ID_HEADER: &str = "understudy-run-id";
