SELECT payload_id FROM messages WHERE src_topic = $1 AND src_topic_id = $2
