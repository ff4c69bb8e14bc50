-- The foreign key from image_tags to images made every tag insert lock its
-- image row (FOR KEY SHARE): a quarter of a millisecond per tag, which capped
-- sync ingest at about 3,000 images/s. The sync writes both tables in one
-- transaction and removes an image's tags with the image (store/images.rs),
-- so the constraint is kept in code instead.
ALTER TABLE image_tags DROP CONSTRAINT image_tags_account_id_region_repository_digest_fkey;
