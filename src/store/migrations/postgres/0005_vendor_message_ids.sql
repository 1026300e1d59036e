-- The id the vendor gave each message (Twilio's SID, SendGrid's sg_message_id, SES's MessageId, Meta's
-- wamid), so that a message is found by the id a platform holds: Twilio's `GET Messages/{Sid}.json`, and
-- anyone auditing one message. Rows stored before this migration have none.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS vendor_message_id TEXT;
CREATE INDEX IF NOT EXISTS messages_vendor_message_id ON messages (vendor_message_id);
