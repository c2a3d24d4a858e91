//! The order-saga contract, generated from `proto/` at build time.

/// `order.v1`: orders, the saga's semantic lock.
pub mod order {
    pub mod v1 {
        tonic::include_proto!("order.v1");
    }
}

/// `payment.v1`: charges and refunds.
pub mod payment {
    pub mod v1 {
        tonic::include_proto!("payment.v1");
    }
}

/// `shipping.v1`: shipments.
pub mod shipping {
    pub mod v1 {
        tonic::include_proto!("shipping.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto above, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("order_saga_descriptor");
