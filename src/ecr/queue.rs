//! The SQS queue that ECR's EventBridge events arrive on, per registry
//! (`[registries.events]`): long-poll receive, batch delete, depth. The
//! intake that acts on the messages is `inventory::events`.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName};

/// Most messages one receive returns (SQS's limit).
pub const RECEIVE_BATCH: i32 = 10;

/// A registry's event queue.
#[derive(Clone, Debug)]
pub struct EventQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    wait_seconds: i32,
    visibility_timeout: Option<i32>,
}

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// SQS's message id.
    pub message_id: String,
    /// What deletes it (this receipt only).
    pub receipt_handle: String,
    /// The EventBridge envelope.
    pub body: String,
    /// How often it was received, this time included (`ApproximateReceiveCount`).
    pub receive_count: u32,
}

/// The queue failed (unreachable, refused, throttled).
#[derive(Debug, thiserror::Error)]
#[error("SQS {operation} failed: {message}")]
pub struct QueueError {
    /// The SQS operation.
    pub operation: &'static str,
    /// What it said.
    pub message: String,
}

impl QueueError {
    fn of<E: std::error::Error>(operation: &'static str, error: E) -> QueueError {
        QueueError {
            operation,
            message: DisplayErrorContext(&error).to_string(),
        }
    }
}

/// What the queue's attributes say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueState {
    /// Messages waiting (`ApproximateNumberOfMessages`).
    pub waiting: i64,
    /// Messages received and not yet deleted (`ApproximateNumberOfMessagesNotVisible`).
    pub in_flight: i64,
    /// The redrive policy, when one is set (messages that fail again and again move on).
    pub redrive_policy: Option<String>,
}

impl EventQueue {
    /// A queue at `url` through `client`.
    pub fn new(
        client: aws_sdk_sqs::Client,
        url: String,
        wait_seconds: i32,
        visibility_timeout: Option<i32>,
    ) -> Self {
        EventQueue {
            client,
            url,
            wait_seconds,
            visibility_timeout,
        }
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Waits up to the long-poll time for up to 10 messages.
    pub async fn receive(&self) -> Result<Vec<QueueMessage>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(RECEIVE_BATCH)
            .wait_time_seconds(self.wait_seconds)
            .set_visibility_timeout(self.visibility_timeout)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| QueueError::of("ReceiveMessage", e))?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| {
                let receive_count = message
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                Some(QueueMessage {
                    message_id: message.message_id?,
                    receipt_handle: message.receipt_handle?,
                    body: message.body.unwrap_or_default(),
                    receive_count,
                })
            })
            .collect())
    }

    /// Deletes the messages of these receipts (at most 10); returns the ids
    /// SQS could not delete (they come back after their visibility timeout).
    pub async fn delete(&self, messages: &[&QueueMessage]) -> Result<Vec<String>, QueueError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&m.receipt_handle)
                    .build()
                    .map_err(|e| QueueError::of("DeleteMessageBatch", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| QueueError::of("DeleteMessageBatch", e))?;
        Ok(output
            .failed
            .iter()
            .filter_map(|f| f.id.parse::<usize>().ok())
            .filter_map(|i| messages.get(i).map(|m| m.message_id.clone()))
            .collect())
    }

    /// Makes a message visible again after `delay` (a retry later than the
    /// queue's visibility timeout would give it, or sooner).
    pub async fn retry_after(&self, message: &QueueMessage, delay: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&message.receipt_handle)
            .visibility_timeout(delay.as_secs().min(43_200) as i32)
            .send()
            .await
            .map_err(|e| QueueError::of("ChangeMessageVisibility", e))?;
        Ok(())
    }

    /// The queue's depth and redrive policy.
    pub async fn state(&self) -> Result<QueueState, QueueError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| QueueError::of("GetQueueAttributes", e))?;
        let attributes: HashMap<QueueAttributeName, String> = output.attributes.unwrap_or_default();
        let number =
            |name: QueueAttributeName| attributes.get(&name).and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok(QueueState {
            waiting: number(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: number(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            redrive_policy: attributes.get(&QueueAttributeName::RedrivePolicy).cloned(),
        })
    }
}
