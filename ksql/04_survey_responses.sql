-- What was answered (talk, slide 45), with the field names of the talk's
-- survey.bot.surveyResponse schema (slide 28).
CREATE STREAM IF NOT EXISTS survey_responses WITH (
  kafka_topic = 'survey-responses',
  value_format = 'AVRO',
  value_avro_schema_full_name = 'survey.bot.surveyResponse'
) AS SELECT
  survey_id AS `survey_id`,
  user_id AS `user_id`,
  response AS `response`
FROM survey_entries
EMIT CHANGES;
