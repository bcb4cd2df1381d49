-- Who answered (talk, slides 41-44). The quoted lower-case aliases and the
-- schema name give the output the field names of the talk's
-- survey.bot.surveyRespondent schema (slide 27).
CREATE STREAM IF NOT EXISTS survey_respondents WITH (
  kafka_topic = 'survey-respondents',
  value_format = 'AVRO',
  value_avro_schema_full_name = 'survey.bot.surveyRespondent'
) AS SELECT
  user_id AS `user_id`,
  name AS `name`,
  company AS `company`,
  location AS `location`
FROM survey_entries
EMIT CHANGES;
